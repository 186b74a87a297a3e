"""allow-all in Python: defines no hook, so every hook keeps the SDK's default (Accept, Allow,
Pass, Deliver). The benchmarks' measure of what a Python plugin costs per call."""
