"""DNS lists (DNSBL) and rblsmtpd's dialogue, shared by tcpserver's loop
and the ``rblsmtpd`` command.

* :mod:`.lists` (pure): the lists, the names to ask, what the answers
  mean, the decision, ``$RBLSMTPD``.
* :mod:`.dialogue` (pure): the SMTP dialogue with a refused client.
* :mod:`.lookup`: every list asked at once on a reactor.
* :mod:`.order` (pure) and :mod:`.ordered`: the ``rblsmtpd`` command's
  decision, taken in command-line order as djb's, over lists asked all
  at once.
"""
