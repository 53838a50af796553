"""The unit page's panels, each with its layout and its callbacks: curated sets, activation
maximization, the polysemanticity breakdown."""
