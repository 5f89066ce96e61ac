"""Streaming prediction over files of any size: read a chunk, predict it, append it, repeat.

`run.predict_file(predictor, input, output)` reads CSV/TSV, JSONL, Parquet or `.txt` a chunk of rows at a time
(`chunk_size`, 4,096 by default), writes the predictions in input order as it goes and keeps memory flat
whatever the file's length. The parts, in the order a row passes them:

- `source`: the input read row by row, validated as `data.read_table`/`read_texts` validate a whole file;
- `rows`: a prediction's output columns, and the count of truncated texts;
- `sink`: the rows appended to stdout or to a partial file beside the output, which becomes the output at the end;
- `values`: how an id or kept column's value is written in each output format, unchanged (Parquet types);
- `record`: the progress record after each chunk, so that `resume=True` continues an interrupted run (Ctrl-C,
  kill -9) after its last complete chunk, and the final file equals an uninterrupted run's byte for byte.
"""
