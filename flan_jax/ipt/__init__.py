"""Instruction Pre-Training (arXiv 2406.14491): the instruction synthesizer and its corpora.

format.py is the synthesizer's text format (records, rendering, parsing, tokens and loss
mask); synth_data.py builds its training data from the collection's context-based tasks;
corpora.py renders synthesis output into pre-training documents, and mixers.py mixes them
into the from-scratch and continual pre-training mixtures.
"""
