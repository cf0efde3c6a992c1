from render_gateway.cli import main

main()
