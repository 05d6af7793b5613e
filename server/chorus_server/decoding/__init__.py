"""Turning a request's CTC logits into text: greedy (the default without a language model) or a beam search
fused with an adapter version's n-gram language model and lexicon, with hotwords and confidences."""
