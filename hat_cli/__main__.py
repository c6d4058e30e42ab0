from hat_cli.cli import main

main()
