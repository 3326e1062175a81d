from swiftray._cli import main

main()
