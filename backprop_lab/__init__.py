"""backprop-lab: a configuration-driven lab for the techniques that make backpropagation work."""
