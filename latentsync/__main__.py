"""``python -m latentsync ...`` — see `latentsync._cli`."""

from latentsync._cli import main

if __name__ == "__main__":
    main()
