"""`python train.py`: the original entry point, with the original defaults and paths.

Equivalent to `weibo-sentiment train` (see `weibo-sentiment train --help` for every option): downloads
uer/gpt2-chinese-cluecorpussmall once into models/gpt2-chinese, trains on dataset/weibo_senti_100k.csv and
writes the best adapter to best_weibo_sentiment_lora/.
"""

import sys

from weibo_sentiment.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
