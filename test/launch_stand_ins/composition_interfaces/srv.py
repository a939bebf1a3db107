"""The three service types ``launch_ros`` names, with empty requests and responses."""


class LoadNode:
    class Request:
        pass

    class Response:
        pass


class UnloadNode:
    class Request:
        pass

    class Response:
        pass


class ListNodes:
    class Request:
        pass

    class Response:
        pass
