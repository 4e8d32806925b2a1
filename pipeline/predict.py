"""`python -m pipeline.predict`: kept at this path; the code is in pipeline.commands.predict."""
from pipeline.commands.predict import main

if __name__ == "__main__":
    main()
