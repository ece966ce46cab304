from marketfeed.cli import main

main()
