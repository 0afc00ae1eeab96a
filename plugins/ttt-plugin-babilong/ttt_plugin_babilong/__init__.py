"""BABILong for ttt: bAbI qa1-qa8 story generators, noise injection, loaders of the published data,
a word tokenizer, exact-match and label metrics, and the `babilong_qa*` tasks."""
