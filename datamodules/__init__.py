"""What feeds the models: records, answer checking, data sources, tokenizers, DataModules."""
