from nim_gateway.cli import main

main()
