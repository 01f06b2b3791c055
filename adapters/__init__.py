"""Processor adapters: one package per processor, all speaking the protocol in adapters.base."""
