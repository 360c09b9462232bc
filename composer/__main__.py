"""``python -m composer``: the Hydra app (see ``composer.app``)."""

from composer.app import main

if __name__ == "__main__":
    main()
