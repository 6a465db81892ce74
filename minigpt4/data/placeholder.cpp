// placeholder: replaced by the data pipeline
