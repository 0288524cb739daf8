"""Command line: thin parsers that call one layer and print."""
