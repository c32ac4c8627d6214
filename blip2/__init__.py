"""blip2: load BLIP-2 / InstructBLIP checkpoints and run every BLIP-2 operation on them.

A pure model library (torch, transformers, Pillow): it knows nothing of queues or HTTP.
Import what you need from its modules, e.g. `from blip2.loading import load_model` and
`from blip2.caption import caption`; this package's own import stays free of torch so that
the torch-free modules (`registry`, `images`, `decoding`, `errors`) can be used without it.
"""
