"""The transfer experiment (does pretraining help the racing policy?) as a library; `src.training.transfer` is its
command and its docstring describes the experiment."""
