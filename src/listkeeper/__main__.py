from listkeeper.cli import main

main()
