"""`python -m experiments.local_losses`."""

from . import main


if __name__ == "__main__":
    main()
