from nim_server.cli import main

if __name__ == "__main__":  # spawned engine processes re-import __main__
    main()
