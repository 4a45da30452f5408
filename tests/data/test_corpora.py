from titan_phases.data.corpora import CORPORA, python_docs_corpus, recipes_corpus


def test_corpora_are_deterministic_and_disjoint_domains():
    assert recipes_corpus().documents == recipes_corpus().documents
    docs = python_docs_corpus()
    recipes = recipes_corpus()
    assert len(docs.documents) > 1000 and len(recipes.documents) > 1000
    assert sum("def " in d or "Return" in d for d in docs.documents) > 100
    assert not any("Return" in d for d in recipes.documents)
    assert all(d.startswith("Recipe ") for d in recipes.documents)


def test_train_and_validation_splits_partition_each_corpus():
    for build in CORPORA.values():
        corpus = build()
        train, validation = corpus.split("train"), corpus.split("validation")
        assert len(validation) >= 1
        assert train + validation == corpus.documents
