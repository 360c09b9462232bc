"""What a recipe names: the registries of module types and ops, the tutorial's blocks, ``Graph`` and one
cached reading of every callable's signature. Imports only the foundations (errors, limits, files)."""
