"""Search: the vector store, slice sampling and weights, the vote, and volume queries."""
