"""The build server's API (`shared/reference/003_…`), served at its own paths and in its own shapes."""
