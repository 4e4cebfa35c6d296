"""The `routecar` command line.

    main.py    the parser, `main()` and the commands run, env, check, fields, rank, demo
    render.py  CliError and how a decision is printed
    traces.py  traces, explain, compile: debugging over the trace store and tenant rules
"""
