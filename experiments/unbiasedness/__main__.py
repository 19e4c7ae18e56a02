"""`python -m experiments.unbiasedness`."""

from . import main


if __name__ == "__main__":
    main()
