"""`python -m pipeline.cache`: kept at this path; the code is in pipeline.commands.cache."""
from pipeline.commands.cache import main

if __name__ == "__main__":
    main()
