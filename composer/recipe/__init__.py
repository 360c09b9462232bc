"""Reading recipes: a path, a name, a dict or a DictConfig becomes one plain, checked tree (YAML,
``${...}`` and ``$(...)``, templates), and the grammar of every node form and top-level section.
Imports ``modules`` for the names a recipe may use; builds nothing."""
