"""``python -m composer``: the Hydra app (see ``composer.app.main``)."""

from composer.app.main import main

if __name__ == "__main__":
    main()
