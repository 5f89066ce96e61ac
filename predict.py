"""`python predict.py`: the original interactive predictor over best_weibo_sentiment_lora/.

Equivalent to `weibo-sentiment predict` (see `weibo-sentiment predict --help` for every option).
"""

import sys

from weibo_sentiment.cli import main

if __name__ == "__main__":
    sys.exit(main(["predict", *sys.argv[1:]]))
