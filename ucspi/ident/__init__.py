"""The RFC 1413 ident client: ``msg`` builds the request and parses the
reply (pure), ``lookup`` runs the exchange on a reactor."""
