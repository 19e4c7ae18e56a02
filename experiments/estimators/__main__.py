"""`python -m experiments.estimators`."""

from . import main


if __name__ == "__main__":
    main()
