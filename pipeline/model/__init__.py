"""The parts of a classifier that are not the backbone's: the new head (activations, regularisers,
constraints), what trains and how BatchNorm behaves (freezing), export, and the model card.
"""
