"""stochastic"""
