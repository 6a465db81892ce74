// placeholder: replaced by the training runner
