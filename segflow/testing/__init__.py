"""Local stand-ins for the outside services segflow talks to, for tests and the offline demo."""
