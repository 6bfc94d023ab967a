package clientapi

import "github.com/gorilla/mux"

func (a *API) toDeviceRoutes(r *mux.Router) {}
