"""HTTP serving of an in-process Runtime (`sglbench serve`)."""
