"""``qirc``: the command line, thin over the Python API (qir.api, qir.ir).

One module per sub-command (inspect_cmd, convert_cmd, run_cmd); common.py holds what they share:
option aliases (QNN's spellings), model loading, atomic writes and number formatting.
"""
