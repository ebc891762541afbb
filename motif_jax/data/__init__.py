"""Data: record files, tokenizer and chat template, alignment filters, toy corpus, packing, Grain.

Offline: `curate.curate(DataConfig)` -> kept traces + counts (`report.write_report`).
Training: `pipeline.sft_dataset(DataConfig, process_index=, process_count=)` -> packed batches.
"""
