"""``python -m spark_torch.bench``."""

from .run import main

if __name__ == "__main__":
    main()
