"""The Gradio app (launch/app.py): one replica serving a web form over the batch machinery.

    args     the command line: Hydra overrides plus the seed's flag spellings; which controls it locks
    texts    labels and help in Chinese and English (ui.lang)
    form     the controls' defaults, choices and locks; a submitted form -> one validated batch Item
    session  models loaded once; one generation at a time over the replica (rank 0 posts, the others follow)
    page     the Gradio Blocks (the only module that imports gradio, and only when the page is built)
    main     process start-up: config, layout, process group, session, server, shutdown, exit code
"""
