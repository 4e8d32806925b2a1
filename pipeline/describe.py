"""`python -m pipeline.describe`: kept at this path; the code is in pipeline.commands.describe."""
from pipeline.commands.describe import main

if __name__ == "__main__":
    main()
