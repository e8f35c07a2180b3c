"""How the weights move: optimisers by name, layer-wise learning rates, learning-rate schedules with 1cycle,
and the LR range test.
"""
