"""Offline demo commands (``lightning_blip quickstart``, ``easy-vqa-finetune``, ``blip2-miniature``,
``capfilt-demo``): users of the library, on the easy-VQA data, on a CPU."""
