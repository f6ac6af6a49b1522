"""The paper's analyses (section 6.1 and the claims of sections 3-4, 7), made runnable.

    features     named-layer activations (fc7 = the 4096-d image descriptor) for a whole store
    retrieval    exact nearest neighbours in Euclidean distance (Fig. 4), chunked; faiss optional
    hashing      the paper's suggestion: an auto-encoder compressing fc7 to short binary codes,
                 searched by Hamming distance
    experiments  relu-vs-tanh, lrn, overlap, dropout, pca-lighting, depth as seeded experiments

Submodules are imported on use; nothing here runs at import.
"""
