"""`make check`'s parts: the bundled photo and its labelled box, the verdict, the speed figures."""
