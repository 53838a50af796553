"""Features that run a live model on demand, apart from the pipeline: the text probe and activation
maximization (and the circuit lab to come). They share one model cache per process, and the app
reaches them lazily, inside background callbacks."""
